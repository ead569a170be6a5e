package itrust;

import jakarta.servlet.annotation.WebServlet;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.io.PrintWriter;
import java.sql.Connection;
import java.sql.SQLException;
import java.util.List;

/**
 * GET /: an HTML page listing the patients with a form to add one; the form posts to / and
 * is answered with a redirect to / (post/redirect/get). Any other path not mapped: 404.
 */
@WebServlet("/")
public class Index extends HttpServlet {
    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        if (!"/".equals(req.getServletPath()) || req.getPathInfo() != null) {
            resp.sendError(404);
            return;
        }
        resp.setContentType("text/html");
        resp.setCharacterEncoding("UTF-8");
        resp.setHeader("Cache-Control", "no-store");
        PrintWriter w = resp.getWriter();
        w.print("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>iTrust (example)</title></head>\n<body>\n");
        w.print("<h1>Patients</h1>\n<p>Version <span id=\"version\">" + html(Db.VERSION) + "</span></p>\n");
        try (Connection c = Db.connect()) {
            List<Db.Patient> ps = Db.patients(c);
            w.print("<ul id=\"patients\">\n");
            for (Db.Patient p : ps) w.print("<li>" + p.id + ": " + html(p.name) + "</li>\n");
            w.print("</ul>\n");
        } catch (SQLException e) {
            resp.setStatus(503);
            log("index: " + Db.describe(e));
            w.print("<p id=\"error\">" + html(Db.describe(e)) + "</p>\n");
        }
        w.print("<form method=\"post\" action=\"" + html(req.getContextPath()) + "/\">\n<label>Name <input name=\"name\" maxlength=\"100\" required></label>\n"
            + "<button type=\"submit\">Add patient</button>\n</form>\n</body></html>\n");
    }

    @Override
    protected void doPost(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        if (!"/".equals(req.getServletPath()) || req.getPathInfo() != null) {
            resp.sendError(404);
            return;
        }
        req.setCharacterEncoding("UTF-8");
        String name = Db.checkName(req.getParameter("name"));
        if (name == null) {
            resp.sendError(400, "give a name of 1 to 100 characters");
            return;
        }
        try (Connection c = Db.connect()) {
            Db.add(c, name);
        } catch (SQLException e) {
            log("index: " + Db.describe(e));
            resp.sendError(503, Db.describe(e));
            return;
        }
        resp.setStatus(303);
        resp.setHeader("Location", req.getContextPath() + "/");
    }

    static String html(String s) {
        StringBuilder b = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char ch = s.charAt(i);
            switch (ch) {
                case '<': b.append("&lt;"); break;
                case '>': b.append("&gt;"); break;
                case '&': b.append("&amp;"); break;
                case '"': b.append("&quot;"); break;
                case '\'': b.append("&#39;"); break;
                default: b.append(ch);
            }
        }
        return b.toString();
    }
}
