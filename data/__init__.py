"""Episode schema, crash-safe Zarr episode store, SQL catalog, LeRobot v3 interchange, datasets."""
