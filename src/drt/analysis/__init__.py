"""Pure analysis maths: activation statistics and PCA, CKA analysis, cost accounting."""
