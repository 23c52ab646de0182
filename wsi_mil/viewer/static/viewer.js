/* wsi_mil viewer: a slide's Deep Zoom tiles plus its tile scores, in OpenSeadragon.
 *
 * Reads /api/slide/ID.json (size, Deep Zoom geometry, tile scores, colour bar, ground truth), opens the
 * slide tiles (/tiles/ID/L/C_R.jpeg) and the score tiles (/overlay/RUN/ID/L/C_R.png) as two layers,
 * outlines the min-max layer's selected tiles, lists the top tiles, shows the tile under the pointer.
 * State for tests and scripts: window.wsiView; <body data-ready="1"> once the first view is loaded,
 * data-hover-tile / -x / -y / -score for the tile under the pointer ("" when none).
 */
(function () {
  "use strict";
  var cfg = window.WSI_VIEW_CONFIG;
  var body = document.body;
  var hoverBox = document.getElementById("hover");
  var api = "/api/slide/" + encodeURIComponent(cfg.slide_id) + ".json" + (cfg.run ? "?run=" + encodeURIComponent(cfg.run) : "");

  function fmt(v) { return Math.abs(v) >= 100 || v === 0 ? v.toFixed(1) : v.toPrecision(3); }

  function source(info, base, ext) {
    return {
      width: info.width, height: info.height, tileSize: info.tile_size, tileOverlap: info.overlap,
      minLevel: 0, maxLevel: info.max_level,
      getTileUrl: function (level, x, y) { return base + "/" + level + "/" + x + "_" + y + "." + ext; }
    };
  }

  /* tile index under level-0 point (x, y): the grid cell of the score layer, as the server draws it */
  function makeLookup(layer) {
    if (!layer || layer.x.length === 0) { return function () { return -1; }; }
    var ox = Math.min.apply(null, layer.x), oy = Math.min.apply(null, layer.y), step = layer.step0;
    var cells = {};
    for (var i = 0; i < layer.x.length; i++) {
      var key = Math.round((layer.x[i] - ox) / step) + "," + Math.round((layer.y[i] - oy) / step);
      var prev = cells[key];
      if (prev === undefined || layer.score[i] >= layer.score[prev]) { cells[key] = i; }
    }
    return function (x, y) {
      var c = Math.floor((x - ox) / step), r = Math.floor((y - oy) / step);
      var hit = cells[c + "," + r];
      return hit === undefined ? -1 : hit;
    };
  }

  function start(info) {
    var layer = info.layer;
    var sources = [{ tileSource: source(info, "/tiles/" + encodeURIComponent(cfg.slide_id), "jpeg") }];
    if (layer) {
      sources.push({ tileSource: source(info, "/overlay/" + encodeURIComponent(info.run) + "/" + encodeURIComponent(cfg.slide_id), "png"),
                     opacity: parseFloat(document.getElementById("opacity").value) });
    }
    var viewer = OpenSeadragon({
      id: "osd", prefixUrl: "/static/openseadragon/images/", tileSources: sources, drawer: "canvas",
      showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 4, imageSmoothingEnabled: false,
      animationTime: 0.6, immediateRender: false, preserveImageSizeOnResize: true, crossOriginPolicy: false
    });
    var lookup = makeLookup(layer);
    var view = window.wsiView = { viewer: viewer, info: info, tileAtImage: lookup };

    function image() { return viewer.world.getItemAt(0); }
    view.imageRect = function (x, y, w, h) { return image().imageToViewportRectangle(x, y, w, h); };
    view.screenToImage = function (px, py) {  /* px, py: pixels relative to the viewer element */
      return image().viewerElementToImageCoordinates(new OpenSeadragon.Point(px, py));
    };
    view.tileAtScreen = function (px, py) { var p = view.screenToImage(px, py); return lookup(p.x, p.y); };
    view.goToTile = function (i, immediately) {
      var s = layer.tile_size0, pad = s * 1.5;
      viewer.viewport.fitBounds(view.imageRect(layer.x[i] - pad, layer.y[i] - pad, s + 2 * pad, s + 2 * pad), immediately);
    };
    view.setOpacity = function (v) { var it = viewer.world.getItemAt(1); if (it) { it.setOpacity(v); } };
    view.loaded = function () {
      for (var k = 0; k < viewer.world.getItemCount(); k++) { if (!viewer.world.getItemAt(k).getFullyLoaded()) { return false; } }
      return viewer.world.getItemCount() === sources.length;
    };

    var hoverMark = document.createElement("div");
    hoverMark.className = "tile-mark hover";
    function showHover(i) {
      if (i < 0) {
        hoverBox.textContent = "no scored tile here";
        ["tile", "x", "y", "score"].forEach(function (k) { body.setAttribute("data-hover-" + k, ""); });
        viewer.removeOverlay(hoverMark);
        return;
      }
      hoverBox.textContent = "tile #" + i + " · score " + fmt(layer.score[i]) + " · x " + layer.x[i] + ", y " + layer.y[i] + " (level-0 px)";
      body.setAttribute("data-hover-tile", String(i));
      body.setAttribute("data-hover-x", String(layer.x[i]));
      body.setAttribute("data-hover-y", String(layer.y[i]));
      body.setAttribute("data-hover-score", String(layer.score[i]));
      var rect = view.imageRect(layer.x[i], layer.y[i], layer.tile_size0, layer.tile_size0);
      if (viewer.getOverlayById(hoverMark)) { viewer.updateOverlay(hoverMark, rect); } else { viewer.addOverlay(hoverMark, rect); }
    }

    viewer.addHandler("open", function () {
      if (layer) {
        document.getElementById("cname").textContent = "score of '" + layer.class_name + "'";
        document.getElementById("cmin").textContent = fmt(layer.vmin);
        document.getElementById("cmax").textContent = fmt(layer.vmax);
        document.getElementById("cgrad").style.background = "linear-gradient(to right," +
          layer.colour_bar.map(function (s) { return s.colour; }).join(",") + ")";
        for (var i = 0; i < layer.x.length; i++) {
          if (layer.selected[i] === 0) { continue; }
          var el = document.createElement("div");
          el.className = "tile-mark " + (layer.selected[i] > 0 ? "top" : "bottom");
          el.setAttribute("data-tile", String(i));
          viewer.addOverlay(el, view.imageRect(layer.x[i], layer.y[i], layer.tile_size0, layer.tile_size0));
        }
        var order = layer.score.map(function (s, j) { return j; }).sort(function (a, b) { return layer.score[b] - layer.score[a]; });
        var list = document.getElementById("toplist");
        order.slice(0, 20).forEach(function (j) {
          var li = document.createElement("li");
          li.setAttribute("data-tile", String(j));
          li.textContent = "#" + j + "  " + fmt(layer.score[j]) + (layer.selected[j] > 0 ? "  [top]" : "");
          li.addEventListener("click", function () { view.goToTile(j, false); showHover(j); });
          list.appendChild(li);
        });
        var slider = document.getElementById("opacity");
        slider.addEventListener("input", function () { view.setOpacity(parseFloat(slider.value)); });
        new OpenSeadragon.MouseTracker({
          element: viewer.canvas,
          moveHandler: function (ev) { showHover(view.tileAtScreen(ev.position.x, ev.position.y)); }
        });
      } else {
        document.getElementById("layerctl").style.display = "none";
        document.getElementById("toplist").innerHTML = "<li>no scores: choose a run with heatmaps</li>";
      }
      if (info.truth && info.truth.length) {
        var ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
        svg.setAttribute("class", "truth");
        svg.setAttribute("viewBox", "0 0 " + info.width + " " + info.height);
        svg.setAttribute("preserveAspectRatio", "none");
        svg.style.pointerEvents = "none";
        info.truth.forEach(function (poly) {
          var p = document.createElementNS(ns, "polygon");
          p.setAttribute("points", poly.map(function (v) { return v[0] + "," + v[1]; }).join(" "));
          svg.appendChild(p);
        });
        viewer.addOverlay(svg, view.imageRect(0, 0, info.width, info.height));
        body.setAttribute("data-truth-polygons", String(info.truth.length));
      }
      function ready() {
        if (view.loaded()) { body.setAttribute("data-ready", "1"); } else { setTimeout(ready, 50); }
      }
      ready();
    });
    viewer.addHandler("open-failed", function (ev) {
      body.setAttribute("data-error", String(ev.message || "open failed"));
    });
  }

  fetch(api).then(function (r) {
    if (!r.ok) { return r.text().then(function (t) { throw new Error(t); }); }
    return r.json();
  }).then(start).catch(function (err) {
    body.setAttribute("data-error", String(err.message || err));
    document.getElementById("osd").innerHTML = '<p class="err" style="margin:24px">' +
      String(err.message || err).replace(/[<>&]/g, function (c) { return { "<": "&lt;", ">": "&gt;", "&": "&amp;" }[c]; }) + "</p>";
  });
})();
