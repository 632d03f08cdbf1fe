"""Settings (forgeci.toml) and pipeline (.forgeci.toml) files: load, validate, write."""
