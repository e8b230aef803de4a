"""Looking at results without writing: explain, eval, calibrate, show, doctor."""
