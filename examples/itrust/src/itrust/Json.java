package itrust;

/** Just enough JSON: string escaping, and reading one string field of a flat object. */
final class Json {
    private Json() {}

    static String str(String s) {
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char ch = s.charAt(i);
            switch (ch) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                case '<': b.append("\\u003c"); break;
                case '>': b.append("\\u003e"); break;
                case '&': b.append("\\u0026"); break;
                default:
                    if (ch < 0x20 || ch == 0x2028 || ch == 0x2029) b.append(String.format("\\u%04x", (int) ch));
                    else b.append(ch);
            }
        }
        return b.append('"').toString();
    }

    /**
     * The string value of {@code key} in a flat JSON object such as {"name":"Alice"}; null when
     * the text is not such an object or the key is missing or not a string.
     */
    static String field(String text, String key) {
        Parser p = new Parser(text);
        try {
            p.ws();
            p.expect('{');
            p.ws();
            if (p.peek() == '}') return null;
            while (true) {
                p.ws();
                String k = p.string();
                p.ws();
                p.expect(':');
                p.ws();
                String v = p.peek() == '"' ? p.string() : p.skipScalar();
                if (k.equals(key)) return v;
                p.ws();
                char c = p.next();
                if (c == '}') return null;
                if (c != ',') return null;
            }
        } catch (IllegalArgumentException e) {
            return null;
        }
    }

    private static final class Parser {
        private final String s;
        private int i;

        Parser(String s) { this.s = s; }

        char peek() { return i < s.length() ? s.charAt(i) : 0; }

        char next() {
            if (i >= s.length()) throw new IllegalArgumentException("end of input");
            return s.charAt(i++);
        }

        void ws() { while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) i++; }

        void expect(char c) { if (next() != c) throw new IllegalArgumentException("expected " + c); }

        String string() {
            expect('"');
            StringBuilder b = new StringBuilder();
            while (true) {
                char c = next();
                if (c == '"') return b.toString();
                if (c < 0x20) throw new IllegalArgumentException("control character in string");
                if (c != '\\') { b.append(c); continue; }
                char e = next();
                switch (e) {
                    case '"': case '\\': case '/': b.append(e); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        if (i + 4 > s.length()) throw new IllegalArgumentException("short \\u escape");
                        b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                        break;
                    default: throw new IllegalArgumentException("bad escape");
                }
            }
        }

        /** A number, true, false or null: skipped; nested values are refused. */
        String skipScalar() {
            int start = i;
            while (i < s.length() && ",} \t\r\n".indexOf(s.charAt(i)) < 0) {
                char c = s.charAt(i);
                if (c == '{' || c == '[' || c == '"') throw new IllegalArgumentException("nested value");
                i++;
            }
            if (i == start) throw new IllegalArgumentException("missing value");
            return null;
        }
    }
}
