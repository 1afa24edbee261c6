"""The MLflow side: runs, the local store, registered versions' aliases, the registry lock, promotion and the serving lease."""
