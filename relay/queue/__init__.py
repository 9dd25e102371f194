# Step 6: the durable retry queue, its records, DSNs and the retry scheduler.
