"""The CI integrations (integrations/): GitHub Actions and the GitLab CI template, run here
as their CI would run them."""
