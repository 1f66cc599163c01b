"""What is generated for the cluster at build time (`python -m slimserve.chart.manifests`): the chart's CRDs,
dashboard, README table and the raw manifests/. A project command with its own extra (`chart`); the operator
never imports it (import-linter's "the operator stays small")."""
