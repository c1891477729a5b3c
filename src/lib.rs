// binding placeholder
