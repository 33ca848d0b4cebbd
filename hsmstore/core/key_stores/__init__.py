"""Custom key stores (issue 17): the resources, their stored connection decision, and the live stores."""
