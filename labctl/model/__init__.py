"""The topology model: parse, resolve defaults, validate (labctl.model.load).
Pure; no kernel access. Kept import-light: `load` pulls in YAML and JSON Schema."""
