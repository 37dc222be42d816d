"""The Cloud Run executor: the real google-cloud-run client against a local fake of the Run Admin API."""
