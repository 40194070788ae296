"""The shop example's Django project: settings and URLs."""
