# Step 2: the suppression records, their rules, and the LMDB store.
