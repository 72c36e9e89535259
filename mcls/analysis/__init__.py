"""Looking at data and results: EDA and result figures, GradCAM, the relabel finder and review, robustness."""
