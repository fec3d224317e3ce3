"""Fleet mode: the production topology on one machine (make fleet, adr/0012)."""
