"""The filesystem half: namespace (op log + apply), inodes, file contents, FUSE ops."""
