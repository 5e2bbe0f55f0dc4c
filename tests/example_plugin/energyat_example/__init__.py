"""A third-party energyat plugin, kept tiny on purpose: read it next to docs/plugins.md."""
