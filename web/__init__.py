"""Flask service: JSON API and admin dashboard over ``services``."""
