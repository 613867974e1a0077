"""Canary analysis providers that run on the worker (Kubernetes) or in the local runtime."""
