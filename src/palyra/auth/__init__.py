"""Provider credentials obtained through OAuth: the protocol client and its in-memory attempts."""
