"""The write-ahead log: its format, writer, reader and change capture."""
