"""Real HTTP servers standing in for the upstreams banditctl talks to."""
