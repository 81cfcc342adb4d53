"""Pure mapping rules: no Kafka, HTTP or database code below this package."""
