"""Mail providers behind one small protocol (``base.Provider``): SendCloud's API and SMTP."""
