"""Textual operator console, a client of the HTTP API."""
