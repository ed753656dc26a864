"""beton's web application for revenue teams (`beton serve`): pages with charts and a JSON API over the warehouse."""
