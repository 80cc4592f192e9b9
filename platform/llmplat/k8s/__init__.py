"""Kubernetes: Helm values for a model layout, RayService status."""
