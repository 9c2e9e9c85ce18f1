"""The shipped presets (YAML), read by ``comalite.config.load_config``."""
