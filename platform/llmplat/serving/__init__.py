"""Ray Serve: the Gateway ingress deployment and the application builder."""
