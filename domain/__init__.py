"""Pure domain core: parcours, délais, escalation ladder, acts. No I/O here."""
