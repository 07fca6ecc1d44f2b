"""What rollout tells the outside world about a rollout: the GitHub Actions job
(outputs, summary, annotations) and notifications (Slack and generic webhooks)."""
