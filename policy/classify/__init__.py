# Step 5: what a reply means (class and category); rules are data.
