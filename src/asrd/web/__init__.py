"""The static web page: `index.html`, `app.js` and `style.css` under `static/`, no build step."""
