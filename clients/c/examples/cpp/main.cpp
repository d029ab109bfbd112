// akidb_embed: embeds one text through akidbd and prints the vector as one JSON array of floats.
// Usage: akidb_embed [--socket PATH] TEXT   (default socket: the daemon's default path)
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include <akidb_client.hpp>

int main(int argc, char** argv) {
  std::string socket;
  std::string text;
  bool have_text = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
      socket = argv[++i];
    } else if (!have_text) {
      text = argv[i];
      have_text = true;
    } else {
      have_text = false;
      break;
    }
  }
  if (!have_text) {
    std::cerr << "usage: " << argv[0] << " [--socket PATH] TEXT\n";
    return 2;
  }
  try {
    akidb::Client client = socket.empty() ? akidb::Client() : akidb::Client(socket);
    std::vector<float> vector = client.embed(text);
    std::string json = "[";
    char number[32];
    for (size_t i = 0; i < vector.size(); ++i) {
      // %.9g round-trips every float exactly.
      std::snprintf(number, sizeof number, "%s%.9g", i ? ", " : "", vector[i]);
      json += number;
    }
    std::cout << json << "]\n";
  } catch (const akidb::Error& error) {
    std::cerr << "akidb_embed: " << error.code_name() << ": " << error.what() << "\n";
    return 1;
  }
  return 0;
}
