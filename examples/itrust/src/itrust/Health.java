package itrust;

import jakarta.servlet.annotation.WebServlet;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

/** GET /health: 200 when a query on the database answers, 500 when it does not. */
@WebServlet("/health")
public class Health extends HttpServlet {
    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        resp.setContentType("application/json");
        resp.setCharacterEncoding("UTF-8");
        resp.setHeader("Cache-Control", "no-store");
        try (Connection c = Db.connect();
             Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT COUNT(*) FROM patients")) {
            r.next();
            resp.getWriter().print("{\"status\":\"ok\",\"version\":" + Json.str(Db.VERSION)
                + ",\"patients\":" + r.getLong(1) + "}");
        } catch (SQLException e) {
            String why = Db.describe(e);
            log("health: " + why);
            resp.setStatus(500);
            resp.getWriter().print("{\"status\":\"error\",\"version\":" + Json.str(Db.VERSION)
                + ",\"error\":" + Json.str(why) + "}");
        }
    }
}
