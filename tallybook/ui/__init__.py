"""The operator dashboard (/ui) and the customer portal page (/portal): static pages over the JSON API."""
