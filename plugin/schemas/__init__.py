"""marshmallow schemas, one module per resource; input schemas refuse unknown keys."""
