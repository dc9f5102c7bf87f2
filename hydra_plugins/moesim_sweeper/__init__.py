"""moesim's hydra plugin: ``hydra/sweeper=moesim`` (hydra loads plugins only from ``hydra_plugins``)."""
