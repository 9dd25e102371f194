# Step 7: events, logs, metrics, the HTTP API and systemd notification.
