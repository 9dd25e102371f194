# Steps 3-4: route (MX) and the remote session; speaks SMTP, decides nothing.
