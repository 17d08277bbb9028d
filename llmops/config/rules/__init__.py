"""Cross-field rules, one module per group; ``cross_field.cross_field_problems`` runs them all."""
