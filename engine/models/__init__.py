"""Model definitions: one decoder covers the supported Llama-family architectures."""
