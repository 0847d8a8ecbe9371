"""Usage governance: smart routing, budgets and cost."""
