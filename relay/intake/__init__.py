# Late bounces and complaints arriving by mail.
