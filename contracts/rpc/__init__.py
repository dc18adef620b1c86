"""Generated gRPC stubs for the .proto sources in proto/ (regenerate with `make protos`)."""
