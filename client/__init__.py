"""The one HTTP client of forgeci's API, shared by the CLI's client commands and the Textual console."""
