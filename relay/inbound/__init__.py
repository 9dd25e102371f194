# Step 1, the client transaction: the SMTP server bouncer's clients talk to.
