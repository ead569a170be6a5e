package itrust;

import jakarta.servlet.annotation.WebServlet;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.sql.Connection;
import java.sql.SQLException;
import java.util.List;

/**
 * GET /api/patients: every patient as a JSON array. POST /api/patients with {"name":"..."}
 * (application/json) or name=... (a form): adds one, 201 with the new patient.
 */
@WebServlet("/api/patients")
public class Patients extends HttpServlet {
    static final int MAX_BODY = 4096;

    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        json(resp);
        try (Connection c = Db.connect()) {
            List<Db.Patient> ps = Db.patients(c);
            StringBuilder b = new StringBuilder("[");
            for (Db.Patient p : ps) b.append(b.length() > 1 ? "," : "").append(p.json());
            resp.getWriter().print(b.append("]"));
        } catch (SQLException e) {
            fail(resp, e);
        }
    }

    @Override
    protected void doPost(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        json(resp);
        String raw;
        String type = req.getContentType() == null ? "" : req.getContentType().toLowerCase();
        if (type.startsWith("application/json")) {
            if (req.getContentLengthLong() > MAX_BODY) {
                error(resp, 413, "the body is larger than " + MAX_BODY + " bytes");
                return;
            }
            byte[] body = req.getInputStream().readNBytes(MAX_BODY + 1);
            if (body.length > MAX_BODY) {
                error(resp, 413, "the body is larger than " + MAX_BODY + " bytes");
                return;
            }
            raw = Json.field(new String(body, java.nio.charset.StandardCharsets.UTF_8), "name");
        } else {
            req.setCharacterEncoding("UTF-8");
            raw = req.getParameter("name");
        }
        String name = Db.checkName(raw);
        if (name == null) {
            error(resp, 400, "give a name of 1 to 100 characters: {\"name\":\"...\"} or name=...");
            return;
        }
        try (Connection c = Db.connect()) {
            Db.Patient p = Db.add(c, name);
            resp.setStatus(201);
            resp.getWriter().print(p.json());
        } catch (SQLException e) {
            fail(resp, e);
        }
    }

    private static void json(HttpServletResponse resp) {
        resp.setContentType("application/json");
        resp.setCharacterEncoding("UTF-8");
        resp.setHeader("Cache-Control", "no-store");
    }

    private void fail(HttpServletResponse resp, SQLException e) throws IOException {
        String why = Db.describe(e);
        log("api/patients: " + why);
        error(resp, 503, why);
    }

    private static void error(HttpServletResponse resp, int status, String why) throws IOException {
        resp.setStatus(status);
        resp.getWriter().print("{\"error\":" + Json.str(why) + "}");
    }
}
