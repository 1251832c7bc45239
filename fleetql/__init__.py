"""fleetql: a GraphQL control plane for a fleet of Kubernetes clusters."""
