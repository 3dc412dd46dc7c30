#include "npy.hpp"

#include <cctype>
#include <cstring>
#include <stdexcept>

namespace ctrt::npy {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;

// A cursor over the header dict: a Python literal of the form
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 16, ), }
struct Cursor {
  const std::string& text;
  size_t at = 0;

  void skip_space() {
    while (at < text.size() && (text[at] == ' ' || text[at] == '\t')) ++at;
  }
  bool take(char c) {
    skip_space();
    if (at < text.size() && text[at] == c) {
      ++at;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!take(c)) throw std::runtime_error(std::string("malformed npy header: expected '") + c + "'");
  }
  std::string quoted() {
    skip_space();
    if (at >= text.size() || (text[at] != '\'' && text[at] != '"')) {
      throw std::runtime_error("malformed npy header: expected a quoted string");
    }
    const char quote = text[at++];
    const size_t end = text.find(quote, at);
    if (end == std::string::npos) throw std::runtime_error("malformed npy header: unterminated string");
    std::string out = text.substr(at, end - at);
    at = end + 1;
    return out;
  }
  std::string word() {
    skip_space();
    const size_t start = at;
    while (at < text.size() && std::isalpha(static_cast<unsigned char>(text[at]))) ++at;
    return text.substr(start, at - start);
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> out;
    while (!take(')')) {
      skip_space();
      const size_t start = at;
      while (at < text.size() && std::isdigit(static_cast<unsigned char>(text[at]))) ++at;
      if (at == start || at - start > 12) throw std::runtime_error("malformed npy header: bad shape");
      out.push_back(std::stoll(text.substr(start, at - start)));
      if (!take(',')) {
        expect(')');
        break;
      }
    }
    return out;
  }
};

}  // namespace

std::string encode_header(const std::string& descr, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t dim : shape) dims += std::to_string(dim) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // (2, 3) but (3,) and ()
  else if (shape.size() == 1) dims.resize(dims.size() - 1);
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t fixed = kMagicLen + 2 + 2 + dict.size() + 1;  // magic, version, length, '\n'
  dict.append(kAlign - fixed % kAlign, ' ');
  dict += '\n';
  std::string out(kMagic, kMagicLen);
  out += '\x01';
  out += '\x00';
  const uint16_t length = static_cast<uint16_t>(dict.size());
  out += static_cast<char>(length & 0xff);
  out += static_cast<char>(length >> 8);
  return out + dict;
}

Header parse_header(const uint8_t* bytes, size_t size) {
  if (size < kMagicLen + 4 || std::memcmp(bytes, kMagic, kMagicLen) != 0) {
    throw std::runtime_error("not an npy array (no \\x93NUMPY magic)");
  }
  if (bytes[6] != 1 || bytes[7] != 0) {
    throw std::runtime_error("npy format version " + std::to_string(bytes[6]) + "." +
                             std::to_string(bytes[7]) + ", expected 1.0");
  }
  const size_t length = bytes[8] | (static_cast<size_t>(bytes[9]) << 8);
  if (kMagicLen + 4 + length > size) throw std::runtime_error("npy header runs past the member");
  const std::string text(reinterpret_cast<const char*>(bytes) + 10, length);
  if (text.empty() || text.back() != '\n') throw std::runtime_error("npy header does not end with a newline");
  Cursor cursor{text};
  Header header;
  bool seen_descr = false, seen_order = false, seen_shape = false;
  cursor.expect('{');
  while (!cursor.take('}')) {
    const std::string key = cursor.quoted();
    cursor.expect(':');
    if (key == "descr" && !seen_descr) {
      header.descr = cursor.quoted();
      seen_descr = true;
    } else if (key == "fortran_order" && !seen_order) {
      if (cursor.word() != "False") throw std::runtime_error("npy array in Fortran order, expected C order");
      seen_order = true;
    } else if (key == "shape" && !seen_shape) {
      header.shape = cursor.tuple();
      seen_shape = true;
    } else {
      throw std::runtime_error("npy header has an unexpected or repeated key '" + key + "'");
    }
    if (!cursor.take(',')) {
      cursor.expect('}');
      break;
    }
  }
  if (!seen_descr || !seen_order || !seen_shape) {
    throw std::runtime_error("npy header lacks descr, fortran_order or shape");
  }
  for (size_t i = cursor.at; i + 1 < text.size(); ++i) {
    if (text[i] != ' ') throw std::runtime_error("npy header has trailing characters");
  }
  header.header_bytes = kMagicLen + 4 + length;
  return header;
}

}  // namespace ctrt::npy
